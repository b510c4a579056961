"""Who may create errands.

Concierge phones real businesses in the person's name, so an unknown chat user
must not be able to queue anything. Empty lists allow nobody: a bot that is
added to a public chat by mistake stays harmless until it is configured.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class AllowList:
    """Allowed chat identities.

    Attributes:
        telegram_users: Telegram numeric user ids (as strings).
        slack_users: Slack user ids ("U…").
        slack_teams: Slack workspace ids ("T…"); everyone in them is allowed.
    """

    telegram_users: frozenset[str] = frozenset()
    slack_users: frozenset[str] = frozenset()
    slack_teams: frozenset[str] = frozenset()

    @classmethod
    def build(
        cls,
        *,
        telegram_users: Iterable[str | int] = (),
        slack_users: Iterable[str] = (),
        slack_teams: Iterable[str] = (),
    ) -> AllowList:
        return cls(
            telegram_users=frozenset(str(u).strip() for u in telegram_users if str(u).strip()),
            slack_users=frozenset(u.strip() for u in slack_users if u.strip()),
            slack_teams=frozenset(t.strip() for t in slack_teams if t.strip()),
        )

    def telegram(self, user_id: int | str | None) -> bool:
        return user_id is not None and str(user_id) in self.telegram_users

    def slack(self, user_id: str | None, team_id: str | None) -> bool:
        return (user_id is not None and user_id in self.slack_users) or (
            team_id is not None and team_id in self.slack_teams
        )
