"""What a task's secrets are: which of its variables hold them, their values in this process,
the masker built from them, and a patch shown to a reader who is not the run's caller.

:class:`TaskSecrets` is the part of :class:`~hal9999.tasks.service.TaskService` that answers
these, from the task's record, its session's ``run/env-kinds.json`` and the config.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from hal9999.agents.registry import upstream_key_env
from hal9999.config import HalConfig
from hal9999.credentials import EnvKinds, file_secrets, iter_unique
from hal9999.envvars import host_text
from hal9999.errors import CredentialsError, TaskStateError, UsageError
from hal9999.redact import SecretMasker, forwarded_is_secret
from hal9999.store import TaskRecord
from hal9999.tasks.request import RunRequest
from hal9999.tasks.session import Session


class TaskSecrets:
    """A task's secrets under ``config`` and ``environ`` (the service's, or a daemon client's:
    it checks a resume's prompt against the secrets of its own shell before sending it)."""

    def __init__(self, config: HalConfig, environ: Mapping[str, str]) -> None:
        self.config = config
        self.environ = environ

    def session(self, task: TaskRecord) -> Session:
        """The session directory of ``task``."""
        return Session(Path(task.session_dir))

    def masker(self, task: TaskRecord, values: Mapping[str, str] | None = None) -> SecretMasker:
        """A masker for every secret the task may see.

        Marked secrets (``--secret``, ``[secrets]`` names, the agent's API key variable) are
        always masked; another forwarded variable when its name or value looks like a secret
        (:func:`~hal9999.redact.forwarded_is_secret`); a literal ``--env NAME=value`` never:
        it is configuration, and masking it would rewrite ordinary words in the output. The
        token-like values inside credential files are masked too. ``values`` are the run's
        exec-time values (the host environment is used for names not in it)."""
        return self.masker_of(self.secret_values(task, values).values())

    def masker_of(self, values: Iterable[str]) -> SecretMasker:
        """A masker for ``values`` (:meth:`secret_values`'s) and the credential files' secrets."""
        masker = SecretMasker()
        for value in values:
            masker.add(value)
        for cred in self.config.credentials:
            for value in file_secrets(cred.source):
                masker.add(value)
        return masker

    def secret_values(
        self, task: TaskRecord, values: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """The task's exec-time variables that are secrets, by name (see :meth:`masker`)."""
        return self.secrets_of(task, values)[1]

    def secrets_of(
        self, task: TaskRecord, values: Mapping[str, str] | None = None
    ) -> tuple[list[str], dict[str, str]]:
        """:meth:`secret_names` and :meth:`secret_values` at once (a run needs both)."""
        names, marked = self._candidates(task)
        given = values or {}
        found: dict[str, str] = {}
        for name in names:
            value = given.get(name, self.environ.get(name))
            if value and (name in marked or forwarded_is_secret(name, value)):
                found[name] = value
        return names, found

    def secret_names(self, task: TaskRecord) -> list[str]:
        """The task's variables whose values may be secrets: all but a literal ``--env``."""
        return self._candidates(task)[0]

    def _candidates(self, task: TaskRecord) -> tuple[list[str], set[str]]:
        """:meth:`secret_names`, and the marked names among them (always secrets)."""
        kinds = EnvKinds.load(self.env_kinds_path(task))
        marked = set(self.agent_secret_names(task)) | set(kinds.secret)
        literal = set(kinds.literal) - marked
        names = [name for name in iter_unique(task.env_keys, sorted(marked)) if name not in literal]
        return names, marked

    def check_prompt(self, req: RunRequest, config: HalConfig) -> None:
        """Refuse a request whose prompt holds the value of one of its secrets (in any form
        the masker finds): a prompt is stored, listed and shown as written (the database,
        ``hal task show``, the dashboard), and a secret may be in none of them. Names only,
        never the value, are said."""
        key_env = upstream_key_env(config, req.agent)
        marked = {*([key_env] if key_env else []), *config.secrets, *req.secret_names}
        literal = set(req.given_env if req.literal_names is None else req.literal_names)
        values: dict[str, str] = {}
        for name in iter_unique(req.env_names, config.forward_env, sorted(marked)):
            value = req.given_env.get(name, self.environ.get(name))
            if name in literal - marked or not value:
                continue
            host_text(name, value)
            if name in marked or forwarded_is_secret(name, value):
                values[name] = value
        _refuse_secret_in(req.prompt, values)

    def require_resume_env(
        self, task: TaskRecord, names: Iterable[str], given: Mapping[str, str], daemon: bool
    ) -> None:
        """Refuse a resume of ``task`` when this shell sets one of ``names`` (the run's
        required variables) in neither ``given`` nor its environment: before the task is
        touched, so a refused resume leaves it as it was (not queued for a run that cannot
        start). The hint says how to give it, and never on the command line for a secret."""
        missing = [n for n in names if n not in given and n not in self.environ]
        if not missing:
            return
        name = missing[0]
        literal = name not in self.secret_names(task)  # a run's --env NAME=VALUE, given so again
        why = ": hal serve keeps no value an earlier run was given" if daemon else ""
        raise CredentialsError(
            f"task {task.id} needs {', '.join(missing)}, which this shell does not set",
            hint=f"export {name}=...{f' (or pass --env {name}=VALUE)' if literal else ''} "
            f"and resume again{why}",
        )

    def check_resume_prompt(
        self, task: TaskRecord, prompt: str, values: Mapping[str, str] | None = None
    ) -> None:
        """Refuse a resume's follow-up prompt that holds the value of one of the task's
        secrets, as :meth:`check_prompt` does a run's: ``values`` are the variables the
        resume was given (this process's environment for the others)."""
        _refuse_secret_in(prompt, self.secret_values(task, values))

    def shown_patch(self, task: TaskRecord, text: str) -> str:
        """``text`` (the task's patch, or its head) masked for a reader who is not the run's
        caller (the dashboard, a hive agent). A patch the scan for secrets did not clear
        (a result refused for holding one, work collection could not bring back) is refused
        when a secret of the task has no value here: a daemon never keeps those its client
        sent, and the patch is the agent's, as written."""
        unknown = [name for name in self.secret_names(task) if name not in self.environ]
        if unknown and not self.session(task).patch_checked.exists():
            raise TaskStateError(
                f"the patch of task {task.id} was not cleared of its secrets and "
                f"{', '.join(unknown)} cannot be masked here",
                hint=f"read it with `hal task diff {task.id}` where the secrets are set",
            )
        return self.masker(task).mask(text)

    def agent_secret_names(self, task: TaskRecord) -> list[str]:
        """Host variables that are secrets for this task: its agent's API key variable and
        the ``secrets`` names of the config."""
        key_env = upstream_key_env(self.config, task.agent)  # the preset's own, unless set
        names = [key_env] if key_env else []
        return [*names, *self.config.secrets]

    def env_kinds_path(self, task: TaskRecord) -> Path:
        """Where the task records which of its variables are literal and which secret."""
        return self.session(task).run_dir / "env-kinds.json"


def _refuse_secret_in(prompt: str, values: Mapping[str, str]) -> None:
    """A :class:`UsageError` naming the first variable whose value (in any form the masker
    finds) ``prompt`` holds; never the value."""
    if not values or not SecretMasker(values.values()).spans(prompt):
        return
    name = next(n for n, v in values.items() if SecretMasker([v]).spans(prompt))
    raise UsageError(
        f"the prompt holds the value of {name}, a secret",
        hint=f"refer to it by name (the agent's environment has {name}): a prompt is "
        "stored and shown as written",
    )
