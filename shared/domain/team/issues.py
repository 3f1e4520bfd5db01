"""What is wrong with a team file, in the one form every reader of it reports, (file, field path,
reason): the PR check CLI prints issues, the team endpoints return them as JSON and the reconciler
mails them to the owner, and `TeamFileError` carries every issue found at once, since a file is
never rejected one problem at a time.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Issue:
    source: str  # the file (or "(body)")
    field: str  # a path such as models.foundry.models[0].tokensPerMinute, or "(file)"
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.field}: {self.reason}"

    def as_dict(self) -> dict[str, str]:
        return {"path": self.source, "field": self.field, "reason": self.reason}


class TeamFileError(Exception):
    """The file cannot be used; `issues` lists every problem found."""

    def __init__(self, issues: list[Issue]) -> None:
        super().__init__("\n".join(str(i) for i in issues))
        self.issues = issues
