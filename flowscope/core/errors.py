"""Exceptions with messages a person can act on."""

from __future__ import annotations

from dataclasses import dataclass


class FlowscopeError(Exception):
    """Base of every error flowscope reports to the user without a traceback."""

    exit_code = 1


class RetryableError(FlowscopeError):
    """Raised by a sink's ``write`` (or ``open``) for a transient failure.

    The runtime keeps the batch and tries again with exponential backoff.
    """


class PluginError(FlowscopeError):
    """A plugin failed to load, registered something twice, or raised while starting."""

    exit_code = 2


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration: the key path and what is wrong with it.

    A ``warning`` does not stop the pipeline: ``config check`` prints it, ``run`` logs it.
    """

    key: str
    message: str
    warning: bool = False

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class ConfigError(FlowscopeError):
    """One or more configuration problems, reported together."""

    exit_code = 2

    def __init__(
        self,
        issues: list[ConfigIssue] | ConfigIssue | str,
        source: str | None = None,
        warnings: list[ConfigIssue] | None = None,
    ):
        if isinstance(issues, str):
            issues = [ConfigIssue("", issues)]
        elif isinstance(issues, ConfigIssue):
            issues = [issues]
        self.issues = list(issues)
        self.source = source
        self.warnings = list(warnings or [])  # found with the problems; reported, but alone would not stop
        super().__init__(self.render())

    def render(self) -> str:
        where = f" in {self.source}" if self.source else ""
        if len(self.issues) == 1:
            return f"invalid configuration{where}: {self.issues[0]}"
        lines = [f"{len(self.issues)} problems in the configuration{where}:"]
        lines += [f"  - {issue}" for issue in self.issues]
        return "\n".join(lines)
