"""Role: integrations of scree with other libraries, each imported explicitly by users (never by
`import scree`): `scree.integrations.transformers` (HuggingFace `attn_implementation="scree"`),
`scree.integrations.vllm` and `scree.integrations.sglang` (attention with those serving engines'
calls and metadata)."""
