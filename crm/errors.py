"""Exceptions a user can act on; each message says what to do."""


class CrmError(Exception):
    """Base class for errors the CLI prints without a traceback."""


class SettingsError(CrmError):
    """An environment variable has a value shop-crm cannot use."""


class DatabaseError(CrmError):
    """The database cannot be reached or is not migrated."""


class IngestError(CrmError):
    """An input file cannot be read at all (missing, unreadable)."""
