"""What a service returns for the task layer to publish once its transaction has committed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Followup:
    """A task to enqueue after the commit: ``task`` (a name from :mod:`services.task_names`)
    with one id argument. Services never publish themselves: a message sent before the commit
    could run before the row it names exists, or name a change that then rolled back."""

    task: str
    arg: str | int
