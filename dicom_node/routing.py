"""Routing: which rule, hence which action and destinations, an instance gets.

Rules are tried in configuration order; the first that matches wins. An
instance no rule matches is kept for the retention period and not processed.
An instance this node produced is never processed again (loop prevention),
whatever the rules say; :func:`dicom_node.provenance.produced_by_node` decides
what is the node's own output (``InstanceInfo.produced_by_node``). The
strength of an ``enhance`` is the matching rule's ``strength`` when it sets
one, else ``[model] strength`` (:func:`enhance_strength`). An ``enhance``
rule with ``send = false`` is a shadow rule: its outputs are kept, not sent
(:func:`enhance_sends`).
"""

from __future__ import annotations

from dataclasses import dataclass

from dicom_node.config import Config, Rule
from dicom_node.dataset_info import InstanceInfo


@dataclass(frozen=True)
class Route:
    """The outcome of routing one instance."""

    action: str
    rule: str | None
    destinations: tuple[str, ...]
    reason: str
    strength: float | None = None
    """For ``enhance``: the share of the generator's correction to apply."""
    send: bool = True
    """False for a shadow rule: the outputs are kept, not sent to `destinations`."""


def rule_strength(config: Config, rule: Rule) -> float:
    """The strength `rule` applies: its own ``strength``, else ``[model] strength``."""
    return rule.strength if rule.strength is not None else config.model.strength


def enhance_strength(config: Config, rule: str | None) -> float:
    """The strength for an instance that the rule named `rule` sent to ``enhance``.

    The worker calls this when it processes the job, with the rule name
    recorded at routing time, so the current configuration decides. The
    first ``enhance`` rule of that name gives its strength
    (:func:`rule_strength`); a name that no configured ``enhance`` rule has
    (the configuration changed since the instance was routed) gets
    ``[model] strength``.
    """
    for candidate in config.rules:
        if candidate.name == rule and candidate.action == "enhance":
            return rule_strength(config, candidate)
    return config.model.strength


def enhance_sends(config: Config, rule: str | None) -> bool:
    """Whether the outputs of an ``enhance`` job routed by the rule named `rule` are sent.

    Like :func:`enhance_strength`, the worker asks when it processes the job,
    so the current configuration decides (turning ``send`` on for go-live
    also sends the jobs still queued). The first ``enhance`` rule of that
    name gives its ``send``; a name that no configured ``enhance`` rule has
    keeps the default: the outputs go to the destinations recorded at routing.
    What was decided is recorded on the job when it completes
    (``jobs.shadow``), so a later configuration change does not rewrite it.
    """
    for candidate in config.rules:
        if candidate.name == rule and candidate.action == "enhance":
            return candidate.send
    return True


def rule_matches(rule: Rule, info: InstanceInfo, calling_aet: str) -> bool:
    """Return whether every condition of `rule` holds for the instance."""
    if rule.modality and info.modality not in rule.modality:
        return False
    if rule.sop_class_uid and info.sop_class_uid not in rule.sop_class_uid:
        return False
    if rule.body_part_examined and info.body_part_examined not in rule.body_part_examined:
        return False
    if rule.view_position and info.view_position not in rule.view_position:
        return False
    if rule.calling_aet and calling_aet.strip() not in rule.calling_aet:
        return False
    pattern = rule.series_description_pattern
    return not (pattern is not None and not pattern.search(info.series_description))


def route(config: Config, info: InstanceInfo, calling_aet: str) -> Route:
    """Decide what to do with a received instance.

    Parameters
    ----------
    config : Config
        The node's configuration (rules and destinations).
    info : InstanceInfo
        The instance's identifying attributes.
    calling_aet : str
        AE title of the peer that sent it.

    Returns
    -------
    Route
        Action ``enhance``, ``forward`` or ``ignore``, the matching rule and
        the destination names (all destinations when the rule names none);
        `send` is false for a shadow rule.
    """
    if info.produced_by_node:
        return Route("ignore", None, (), "produced by this node (ContributingEquipmentSequence)")
    for rule in config.rules:
        if rule_matches(rule, info, calling_aet):
            if rule.action == "ignore":
                return Route("ignore", rule.name, (), f"rule {rule.name!r} says ignore")
            names = rule.destinations or tuple(d.name for d in config.destinations)
            strength = rule_strength(config, rule) if rule.action == "enhance" else None
            reason = f"matched rule {rule.name!r}"
            if not rule.send:
                reason += " (shadow: outputs kept, not sent)"
            return Route(rule.action, rule.name, names, reason, strength, rule.send)
    return Route("ignore", None, (), "no rule matches")
