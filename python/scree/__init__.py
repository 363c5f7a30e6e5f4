from scree._errors import *  # noqa
