"""molamd's fuzz harness: every decoder of bytes from a bank, an operator's socket or a config file, fed real
files from tests/fixtures mutated byte by byte (hypothesis draws the mutations, so a finding shrinks).

Hypothesis rather than atheris: it is already a locked dependency of the suite, runs in pytest as it is, and shrinks
what it finds; atheris would add a compiled dependency, and its coverage guidance needs instrumented builds of the
C code that matters here (lxml, msgspec, the decimal module), which we do not have. The byte mutator over real
files stands in for much of what coverage guidance would find.

``scripts/fuzz TARGET|all --minutes N`` is the long run; tests/test_fuzz.py runs every target for a few seconds.
"""

from ._run import BlowUp as BlowUp
from ._run import Hang as Hang
from ._run import Stats as Stats
from ._run import fuzz as fuzz
from ._targets import TARGETS as TARGETS
from ._targets import Finding as Finding
from ._targets import Target as Target
