"""Exception hierarchy of the node.

Every error the node raises on purpose derives from :class:`NodeError`. The
*class* of an exception decides what happens to the work that raised it (see
:class:`~dicom_node.retry.RetryPolicy`): a :class:`PermanentError` fails the
job at once; anything else, a :class:`RetryableError` or an exception the
node did not expect, is retried with exponential backoff until the maximum
number of attempts, then dead-lettered.
"""

# NodeError (the root) and ConfigError are defined with the configuration, which
# imports nothing else of the project; they are re-exported here with the rest.
from dicom_node.config_errors import ConfigError as ConfigError
from dicom_node.config_errors import NodeError as NodeError


class RetryableError(NodeError):
    """A transient failure (peer down, timeout, database busy): try again later."""


class PermanentError(NodeError):
    """A failure that retrying cannot fix (corrupt pixel data, unsupported image)."""


class StorageError(RetryableError):
    """The spool or the database could not persist a received instance."""


class DispatchError(RetryableError):
    """A destination did not store what was sent to it."""


class ModelError(PermanentError):
    """The ONNX model is missing, unreadable or does not follow the node's convention."""


class JobNotFoundError(NodeError, LookupError):
    """No job has the given id (``dicom-node jobs show`` / ``jobs retry``)."""


class JobStateError(NodeError, ValueError):
    """A job is not in a state that allows the requested operation."""
