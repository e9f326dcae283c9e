"""The error catalogue (SPEC section 3) and the exception root.

Two kinds of failure never mix:

* the partner's bad data: a row error (a value, :class:`RowError`, written to
  the errors report) or a rejected file (:class:`FileRejected`);
* our fault (:class:`InternalError` and its children): logged, retried from
  the last checkpoint, and quarantined after ``import.max_attempts``.

Operator mistakes (bad configuration, unknown tenant on the command line) are
:class:`OperatorError`: they stop the command with a clear message.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ErrorKind(enum.Enum):
    """Every error class of SPEC section 3 with its exact message."""

    INVALID_MDN_FORMAT = (
        "MobilePhoneErrors::InvalidMDNFormat",
        "The MDN is incorrectly formatted. It should be an E.164 MDN.",
    )
    CUSTOM_FIELD_NOT_FOUND = ("PersonErrors::CustomFieldNotFound", "Custom field not found")
    CHARSET_MISMATCH = (
        "PersonErrors::InvalidSelectCustomFieldValue",
        "Custom field value is incompatible with the field’s character set",
    )
    INVALID_SELECT_VALUE = (
        "PersonErrors::InvalidSelectCustomFieldValue",
        "Invalid custom field value",
    )
    INVALID_CUSTOM_FIELD_VALUE = (
        "PersonErrors::InvalidCustomFieldValue",
        "Invalid custom field value",
    )
    PERSON_NOT_FOUND = ("PersonErrors::PersonNotFound", "Person not found")
    MOBILE_PHONE_ALREADY_ASSIGNED = (
        "PersonErrors::MobilePhoneAlreadyAssigned",
        "Mobile Phone Already Assigned",
    )
    INVALID_PERSON_ID = ("PersonErrors::InvalidPersonID", "Invalid person_id")
    MDN_CHANGE_NOT_ALLOWED = ("PersonErrors::MdnChangeNotAllowed", "mdn change not allowed")
    CREATE_REQUIRES_KEY = (
        "PersonErrors::PersonCreateRequiresDeviceOrExternalPersonId",
        "Creating a person requires a device or an external person id",
    )
    UNIQUE_VIOLATION = ("PG::UniqueViolation", "duplicate key value violates unique constraint")
    TRANSIENT_LOOKUP_FAILURE = (
        "CarrierLookupService::TransientLookupFailureError",
        "A temporary issue with the carrier lookup service prevented the row from being "
        "processed. Please try again later.",
    )
    PERMANENT_LOOKUP_FAILURE = (
        "CarrierLookupService::PermanentLookupFailureError",
        "The MDN supplied is not a valid mobile phone active on a valid carrier.",
    )
    # The next three carry a message of their own (SPEC 1.1-1.3).
    INVALID_ROW_FORMAT = ("PersonErrors::InvalidImportRowFormat", "")
    UNKNOWN_ENCODING = (
        "FileEngine::EncodingDetection::Unknown8BitEncodingDetected",
        "File is not UTF-8 or ASCII encoded",
    )
    INVALID_FILE_FORMAT = ("PersonErrors::InvalidImportFileFormat", "")

    @property
    def error_class(self) -> str:
        return self.value[0]

    @property
    def message(self) -> str:
        return self.value[1]

    def at(self, field: str = "", value: str = "", *, message: str | None = None) -> RowError:
        """A row error of this kind for ``field`` holding ``value`` (as in the file)."""
        text = self.message if message is None else message
        if not text:
            raise ValueError(f"{self.name} needs an explicit message")
        return RowError(error_class=self.error_class, message=text, field=field, value=value)


@dataclass(frozen=True, kw_only=True, slots=True)
class RowError:
    """One line of the errors report: what went wrong with which column of a row."""

    error_class: str
    message: str
    field: str = ""
    value: str = ""

    def __post_init__(self) -> None:
        if not self.error_class or not self.message:
            raise ValueError("a row error needs a class and a message")


def row_format_error(message: str) -> RowError:
    """``PersonErrors::InvalidImportRowFormat`` with its specific message."""
    return ErrorKind.INVALID_ROW_FORMAT.at(message=message)


class PersonsdError(Exception):
    """Root of every exception personsd raises on purpose."""


class PartnerDataError(PersonsdError):
    """The partner's data is at fault; the outcome goes to the outbox."""


class FileRejected(PartnerDataError):
    """A file-level error: the whole file is rejected and no row is applied."""

    def __init__(self, kind: ErrorKind, message: str | None = None, *, line: int | None = None):
        self.error_class = kind.error_class
        self.message = message if message is not None else kind.message
        if not self.message:
            raise ValueError(f"{kind.name} needs an explicit message")
        self.line = line
        super().__init__(f"{self.error_class}: {self.message}")

    @classmethod
    def format(cls, message: str, *, line: int | None = None) -> FileRejected:
        """``PersonErrors::InvalidImportFileFormat`` with a message naming the problem."""
        return cls(ErrorKind.INVALID_FILE_FORMAT, message, line=line)

    @classmethod
    def encoding(cls, *, line: int | None = None) -> FileRejected:
        return cls(ErrorKind.UNKNOWN_ENCODING, line=line)


class OperatorError(PersonsdError):
    """The operator asked for something impossible (bad config, unknown tenant...)."""


class ConfigError(OperatorError):
    """The configuration file or environment is invalid; the message names the key."""


class InternalError(PersonsdError):
    """Our fault: logged, retried from the checkpoint, quarantined after max attempts."""


class TransientError(InternalError):
    """Worth retrying soon: database unreachable, disk full, lock timeout."""


class Interrupted(PersonsdError):
    """A stop signal, not a failure: the import stopped between chunks on request
    (SIGTERM) and resumes from its checkpoint; it spends no attempt."""


class UnknownImport(InternalError):
    """An import id the database does not hold: inside the daemon, a bug.

    Commands that take an id from the operator turn it into an OperatorError.
    """


class LeaseLost(PersonsdError):
    """Another instance took this import over (SPEC 12): stop it, change nothing.

    Neither the partner's fault nor a bug: the import is in other hands, so no
    attempt is spent and its status is left to the new holder.
    """


class AlreadyRunning(OperatorError):
    """A second daemon on a root or SQLite database that one already serves."""
