"""ISO 20022 payment files: pain.001 generation and pain.002 reading, pure (records in, bytes out, and back)."""

from ._charset import SEPA_LATIN as SEPA_LATIN
from ._charset import CharsetError as CharsetError
from ._charset import to_charset as to_charset
from ._model import Account as Account
from ._model import Pain001Version as Pain001Version
from ._model import Party as Party
from ._model import PaymentBatch as PaymentBatch
from ._model import PaymentFile as PaymentFile
from ._model import PostalAddress as PostalAddress
from ._model import Transfer as Transfer
from ._pain001 import PaymentFileError as PaymentFileError
from ._pain001 import build_pain001 as build_pain001
from ._pain001 import msg_id as msg_id
from ._pain002 import PaymentStatus as PaymentStatus
from ._pain002 import Reason as Reason
from ._pain002 import StatusReport as StatusReport
from ._pain002 import StatusReportError as StatusReportError
from ._pain002 import TransactionStatus as TransactionStatus
from ._pain002 import parse_pain002 as parse_pain002
from ._schemas import validate as validate
from ._xmldsig import ECDSA_SHA256 as ECDSA_SHA256
from ._xmldsig import RSA_SHA256 as RSA_SHA256
from ._xmldsig import SignatureInvalid as SignatureInvalid
from ._xmldsig import SigningError as SigningError
from ._xmldsig import sign_enveloped as sign_enveloped
from ._xmldsig import verify_enveloped as verify_enveloped
