"""Bank statement formats: MT940/MT942, CSV (per-bank profiles) and camt.053, all read into Statements.

The parsers are pure functions, bytes in and typed records out; they raise only StatementError.
"""

from ._camt import DEFAULT_MAX_BYTES as DEFAULT_MAX_BYTES
from ._camt import parse_camt as parse_camt
from ._csv import MOLAMD_PROFILE as MOLAMD_PROFILE
from ._csv import CsvColumns as CsvColumns
from ._csv import CsvProfile as CsvProfile
from ._csv import parse_csv as parse_csv
from ._details import Details as Details
from ._details import parse_details as parse_details
from ._errors import BalanceMismatch as BalanceMismatch
from ._errors import StatementError as StatementError
from ._errors import StatementFormatError as StatementFormatError
from ._formats import FORMATS as FORMATS
from ._formats import guess_format as guess_format
from ._formats import iter_statements as iter_statements
from ._formats import parse_statements as parse_statements
from ._model import Balance as Balance
from ._model import Statement as Statement
from ._model import StatementLine as StatementLine
from ._model import check_balance as check_balance
from ._mt940 import iter_mt940 as iter_mt940
from ._mt940 import parse_mt940 as parse_mt940
