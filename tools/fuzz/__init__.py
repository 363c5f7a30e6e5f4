"""scree's fuzzing harness (issue 14): drives every public entry point with valid random inputs
(checked against scree.kernels.reference's semantics) and with malformed and extreme ones, each
case in a worker child process, and counts, minimises and saves what is not the right answer or a
typed scree error. Run `python -m tools.fuzz --help`.

One concept per module:
  generate.py        deterministic recipes: case(seed, index)
  render.py          a recipe as the Python a user would write (what runs, and the saved repro)
  prelude.py         the small input makers (V, O, S) rendered cases call, and host copies
  oracle_layout.py   the right outcome of constructors, Array methods and bridges
  oracle_attention.py the right outcome of varlen attention, forward and backward
  expect.py          what an expected answer is, and the comparison with the actual one
  oracle.py          the outcome classes (ok, typed, untyped, wrong, crash, hang)
  worker.py          the child process that runs cases
  runner.py          the pool of workers: crashes and hangs recorded, workers replaced
  minimize.py        shrinking a failure while its signature holds
  hooks.py           deliberate failures the smoke test injects
  __main__.py        the command line: counts table, saved repros, summary.json"""
