"""What a record says about who called and what policy decided, in the words replay recomputes."""
from __future__ import annotations

from typing import Any

from gwc.runtime.policy.decide import Decision, Principal


def principal_fields(principal: Principal) -> dict[str, Any]:
    return {"subject": principal.subject, "kind": principal.kind,
            "groups": sorted(principal.groups), "acting_for": principal.acting_for}


def policy_fields(decision: Decision) -> dict[str, Any]:
    """The policy evaluation as replay recomputes it."""
    return {"effect": decision.effect, "reason": decision.reason, "rules": list(decision.rule_ids),
            "mode": decision.mode, "approval_required": decision.approval_required}
