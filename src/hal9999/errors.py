"""The one error tree of hal9999.

Every error a user can see is a :class:`HalError`. Each class carries a stable ``code``
(used in events, HTTP/MCP payloads and the CLI), an ``exit_status`` for the CLI, and an
optional ``hint`` that tells the user how to fix the problem::

    HalError                      hal_error          exit 1
    ├── InternalError             internal           exit 1
    ├── ConfigError               config_invalid     exit 2
    │   ├── UsageError            usage              exit 2
    │   └── HomeError             home_unusable      exit 2
    ├── NotFoundError             not_found          exit 3
    │   ├── TaskNotFound          task_not_found     exit 3
    │   ├── AmbiguousTaskId       task_id_ambiguous  exit 3
    │   ├── AgentNotFound         agent_not_found    exit 3
    │   └── ThreadNotFound        thread_not_found   exit 3
    ├── RepoError                 repo_invalid       exit 4
    │   ├── SecretInResult        secret_in_result   exit 4
    │   ├── MergeRefused          merge_refused      exit 4
    │   └── CheckoutDamaged       checkout_damaged   exit 4
    ├── AgentError                agent_error        exit 5
    │   ├── UnknownAgent          agent_unknown      exit 5
    │   ├── AgentNotInstalled     agent_missing      exit 5
    │   └── AgentFailed           agent_failed       exit 5
    ├── ProviderError             provider_error     exit 6
    │   ├── UnknownProvider       provider_unknown   exit 6
    │   ├── ProviderUnavailable   provider_missing   exit 6
    │   ├── CapabilityError       capability_missing exit 6
    │   ├── SandboxNotFound       sandbox_not_found  exit 6
    │   ├── HostKeyRejected       host_key_rejected  exit 6
    │   ├── HostUnreachable       host_unreachable   exit 6
    │   ├── SpendCapReached       spend_cap          exit 6
    │   ├── CloudApiError         cloud_api_error    exit 6
    │   │   ├── CloudValidationError cloud_validation exit 6
    │   │   ├── CloudAuthError    cloud_auth         exit 6
    │   │   ├── CloudNotFound     cloud_not_found    exit 6
    │   │   ├── CloudRateLimited  cloud_rate_limited exit 6
    │   │   └── CloudServerError  cloud_server       exit 6
    │   └── ExecError             exec_failed        exit 6
    │       └── UnsafePath        unsafe_path        exit 6
    ├── ProcessError              process_error      exit 7
    ├── CredentialsError          credentials_error  exit 8
    ├── TaskStateError            task_state         exit 9
    ├── ThreadStateError          thread_state       exit 9
    ├── ThreadForbidden           thread_forbidden   exit 9
    ├── DiskLimitExceeded         disk_limit         exit 10
    ├── DiskFull                  disk_full          exit 10
    ├── GatewayError              gateway_error      exit 11
    ├── BudgetExceeded            budget_exceeded    exit 11
    ├── ModelNotAllowed           model_not_allowed  exit 11
    ├── HiveError                 hive_error         exit 12
    │   └── HiveLimited           hive_limited       exit 12
    ├── ForgeError                forge_error        exit 13
    │   ├── ForgeAuthError        forge_auth         exit 13
    │   ├── ForgeNotFound         forge_not_found    exit 13
    │   ├── ForgeRateLimited      forge_rate_limited exit 13
    │   └── ForgeUnreachable      forge_unreachable  exit 13
    ├── OutputError               output_failed      exit 74
    ├── TaskTimeout               timed_out          exit 124
    └── TaskCancelled             cancelled          exit 130

Library exceptions are mapped to these at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is dear for the thin `hal run`
if TYPE_CHECKING:
    from typing import Any, ClassVar


class HalError(Exception):
    """Base of every error hal9999 raises on purpose."""

    code: ClassVar[str] = "hal_error"
    exit_status: ClassVar[int] = 1

    def __init__(self, message: str, *, hint: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details

    def __str__(self) -> str:
        return self.message

    def one_line(self) -> str:
        """The message and the fix, as the CLI prints them."""
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form for events and API payloads."""
        return {"code": self.code, "message": self.message, "hint": self.hint}


class ConfigError(HalError):
    """Configuration or an option is invalid."""

    code = "config_invalid"
    exit_status = 2


class UsageError(ConfigError):
    """The command line is invalid."""

    code = "usage"


class HomeError(ConfigError):
    """The data directory (``HAL_HOME``) or its database cannot be used."""

    code = "home_unusable"


class InternalError(HalError):
    """A bug: an exception hal did not expect; the traceback is in a log file."""

    code = "internal"


class NotFoundError(HalError):
    """Something the user named does not exist."""

    code = "not_found"
    exit_status = 3


class TaskNotFound(NotFoundError):
    """No task matches the id or prefix."""

    code = "task_not_found"


class AmbiguousTaskId(NotFoundError):
    """A task id prefix matches more than one task."""

    code = "task_id_ambiguous"


class AgentNotFound(NotFoundError):
    """No hive agent has that name."""

    code = "agent_not_found"


class ThreadNotFound(NotFoundError):
    """No approval, question or reminder of the hive has this id."""

    code = "thread_not_found"


class RepoError(HalError):
    """The repository path, URL or ref is unusable."""

    code = "repo_invalid"
    exit_status = 4


class SecretInResult(RepoError):
    """The task's result holds the value of one of its secrets; it was not brought back."""

    code = "secret_in_result"


class MergeRefused(RepoError):
    """An approved branch cannot be merged as shown (conflict, moved, target checked out)."""

    code = "merge_refused"


class CheckoutDamaged(RepoError):
    """A session's checkout has no valid ``HEAD`` commit or tree: a resume stops there."""

    code = "checkout_damaged"


class AgentError(HalError):
    """An agent could not be set up or failed."""

    code = "agent_error"
    exit_status = 5


class UnknownAgent(AgentError):
    """No preset or template matches the agent name."""

    code = "agent_unknown"


class AgentNotInstalled(AgentError):
    """The agent's program is missing inside the sandbox."""

    code = "agent_missing"


class AgentFailed(AgentError):
    """The agent exited with a failure status."""

    code = "agent_failed"


class ProviderError(HalError):
    """A sandbox provider failed."""

    code = "provider_error"
    exit_status = 6


class UnknownProvider(ProviderError):
    """No provider is registered under the name."""

    code = "provider_unknown"


class ProviderUnavailable(ProviderError):
    """The provider's host tooling is missing or unusable."""

    code = "provider_missing"


class CapabilityError(ProviderError):
    """The provider does not support what the spec asks for."""

    code = "capability_missing"


class SandboxNotFound(ProviderError):
    """The sandbox does not exist (any more)."""

    code = "sandbox_not_found"


class HostKeyRejected(ProviderError):
    """A remote host's key does not match the configured known-hosts entry."""

    code = "host_key_rejected"


class HostUnreachable(ProviderError):
    """No connection to a remote host could be made (down, lost, or the network): another
    host may do. Never a key problem (:class:`HostKeyRejected`, a refused key), which must be
    seen."""

    code = "host_unreachable"


class SpendCapReached(ProviderError):
    """A cloud provider's spend cap (machines at once, machine-hours a day) is reached."""

    code = "spend_cap"


class CloudApiError(ProviderError):
    """A cloud vendor's API refused or failed a call (mapped from its HTTP status)."""

    code = "cloud_api_error"


class CloudValidationError(CloudApiError):
    """The API said the request was invalid (HTTP 400/422)."""

    code = "cloud_validation"


class CloudAuthError(CloudApiError):
    """The API refused the credentials (HTTP 401/403)."""

    code = "cloud_auth"


class CloudNotFound(CloudApiError):
    """The API has no such resource (HTTP 404)."""

    code = "cloud_not_found"


class CloudRateLimited(CloudApiError):
    """The API's rate limit held after every retry (HTTP 429)."""

    code = "cloud_rate_limited"


class CloudServerError(CloudApiError):
    """The API failed on its side or could not be reached (HTTP 5xx, timeouts)."""

    code = "cloud_server"


class ExecError(ProviderError):
    """A command could not be run inside the sandbox."""

    code = "exec_failed"


class UnsafePath(ExecError):
    """A path the agent controls is not what the host may touch (a link, FIFO, hard link...)."""

    code = "unsafe_path"


class ProcessError(HalError):
    """The process manager could not start, find or stop a process."""

    code = "process_error"
    exit_status = 7


class CredentialsError(HalError):
    """A credential could not be found or installed."""

    code = "credentials_error"
    exit_status = 8


class TaskStateError(HalError):
    """The task is not in a state that allows the action."""

    code = "task_state"
    exit_status = 9


class ThreadStateError(HalError):
    """The approval or question is already resolved (or expired); the action is refused."""

    code = "thread_state"
    exit_status = 9


class ThreadForbidden(HalError):
    """The caller may not act on this approval or question (not its target, asking itself)."""

    code = "thread_forbidden"
    exit_status = 9


class DiskLimitExceeded(HalError):
    """The sandbox's files grew past its disk limit; the task was stopped (its work is still
    collected)."""

    code = "disk_limit"
    exit_status = 10


class DiskFull(HalError):
    """The disk holding hal's home filled up while a task ran; the task was stopped."""

    code = "disk_full"
    exit_status = 10


class OutputError(HalError):
    """A command's standard output refused its writes (``> /dev/full``, a file on a full
    disk): nothing of hal's own failed. 74 is EX_IOERR of ``sysexits.h``."""

    code = "output_failed"
    exit_status = 74


class GatewayError(HalError):
    """The LLM gateway could not be started, reached or told about a task."""

    code = "gateway_error"
    exit_status = 11


class BudgetExceeded(HalError):
    """A task (or the day) reached its token or cost budget; the gateway refused more calls."""

    code = "budget_exceeded"
    exit_status = 11


class ModelNotAllowed(HalError):
    """The agent asked the gateway for a model outside the task's allow-list."""

    code = "model_not_allowed"
    exit_status = 11


class HiveError(HalError):
    """A hive action is not possible (a reserved or taken name, a refused message)."""

    code = "hive_error"
    exit_status = 12


class HiveLimited(HiveError):
    """A hive guard refused the action: the hive budget, a rate limit or a message loop."""

    code = "hive_limited"


class ForgeError(HalError):
    """A forge (GitHub, GitLab) refused or failed a request hal made for a task."""

    code = "forge_error"
    exit_status = 13


class ForgeAuthError(ForgeError):
    """The forge needs a token hal does not have, or refused the one it has."""

    code = "forge_auth"


class ForgeNotFound(ForgeError):
    """The issue or repository does not exist (or is private and no token may see it)."""

    code = "forge_not_found"


class ForgeRateLimited(ForgeError):
    """The forge's rate limit is spent until a time longer than hal waits."""

    code = "forge_rate_limited"


class ForgeUnreachable(ForgeError):
    """The forge could not be reached (name, connection, TLS or a server error)."""

    code = "forge_unreachable"


class TaskTimeout(HalError):
    """The task ran past its timeout."""

    code = "timed_out"
    exit_status = 124


class TaskCancelled(HalError):
    """The task was cancelled."""

    code = "cancelled"
    exit_status = 130


def exit_status_for(code: str | None) -> int:
    """The CLI exit status of an error code (1 for an unknown code, 0 for none)."""
    if code is None:
        return 0
    pending: list[type[HalError]] = [HalError]
    while pending:
        cls = pending.pop()
        if cls.code == code:
            return cls.exit_status
        pending.extend(cls.__subclasses__())
    return 1


def error_class_for_status(status: int) -> type[HalError]:
    """The most general error class with this CLI exit status (:class:`HalError` for one no
    class has): a parent process reports a child's failure with the child's status."""
    level: list[type[HalError]] = [HalError]
    while level:
        for cls in level:
            if cls.exit_status == status:
                return cls
        level = [sub for cls in level for sub in cls.__subclasses__()]
    return HalError
