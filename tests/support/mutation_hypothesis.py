"""A Hypothesis profile for mutation testing (scripts/mutation loads this module as a pytest plugin).

Derandomized and without the example database: every mutant meets the same examples, so whether it survives
does not depend on the run or on what an earlier mutant's failure saved.
"""

from hypothesis import settings

settings.register_profile("mutation", derandomize=True, database=None)
