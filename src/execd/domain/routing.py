"""Routing (issue 34): which account an order that names none goes to.

Pure: the rules as the config states them, which one an order matches (first match
wins), and the choice among its accounts given why each one cannot take it (the risk
gate says why, from what it knows without a network call). The choice is made before
the order is committed; once committed it stays at its account.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fnmatch import fnmatchcase

from execd.domain.orders import OrderSpec
from execd.domain.pricing import Priced
from execd.domain.risk import Exposure

POLICIES = ("first", "best_price")
DEFAULT_RULE = "default"


@dataclass(frozen=True, slots=True)
class Rule:
    """One `[[routing.rules]]` table; empty globs match anything."""

    accounts: tuple[str, ...]
    strategies: tuple[str, ...] = ()
    symbols: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    policy: str = "first"
    name: str = DEFAULT_RULE  # "rules[N]" as the record names it

    def matches(self, spec: OrderSpec) -> bool:
        return all(not globs or any(fnmatchcase(value, g) for g in globs) for value, globs in (
            (spec.strategy_id, self.strategies), (spec.symbol, self.symbols),
            (spec.type, self.types)))


def _globs(raw: object, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(g, str) and g for g in raw):
        raise ValueError(f"{where} must be a list of non-empty strings (globs)")
    for g in raw:  # fnmatch takes anything: an unclosed [ would silently match literally
        if g.count("[") != g.count("]"):
            raise ValueError(f"{where}: bad glob {g!r} (unbalanced [ ])")
    return tuple(raw)


def parse_rules(raw: object, accounts: Collection[str]) -> tuple[Rule, ...]:
    """`[[routing.rules]]` checked against the accounts; ValueError: one line."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise ValueError("routing.rules must be [[routing.rules]] tables")
    rules = []
    known = ", ".join(accounts)
    for i, table in enumerate(raw):
        where = f"routing.rules[{i}]"
        unknown = set(table) - {"strategies", "symbols", "types", "accounts", "policy"}
        if unknown:
            raise ValueError(f"unknown key(s) in {where}: {', '.join(sorted(unknown))}")
        names = _globs(table.get("accounts"), f"{where}.accounts")
        if not names:
            raise ValueError(f"{where}.accounts must name at least one account; accounts: "
                             f"{known}")
        bad = [n for n in names if n not in accounts]
        if bad:
            raise ValueError(f"{where}.accounts names unknown account(s) {', '.join(bad)}; "
                             f"accounts: {known}")
        if len(set(names)) != len(names):
            raise ValueError(f"{where}.accounts names an account twice")
        policy = table.get("policy", "first")
        if policy not in POLICIES:
            raise ValueError(f"{where}.policy must be one of: {', '.join(POLICIES)}")
        rules.append(Rule(accounts=names, strategies=_globs(table.get("strategies"),
                                                             f"{where}.strategies"),
                          symbols=_globs(table.get("symbols"), f"{where}.symbols"),
                          types=_globs(table.get("types"), f"{where}.types"),
                          policy=policy, name=f"rules[{i}]"))
    return tuple(rules)


def rule_for(rules: Sequence[Rule], default: Sequence[str], spec: OrderSpec) -> Rule:
    """The first rule the order matches; none: the default accounts."""
    for r in rules:
        if r.matches(spec):
            return r
    return Rule(accounts=tuple(default))


def where_shares_are(books: Mapping[tuple[str, str, str], Exposure], spec: OrderSpec,
                     account: str) -> str | None:
    """A sell that reduces the strategy's long (over every account) goes only where its
    book is long, a buy that covers its short only where it is short: why not here."""
    total = sum((b.position for (_, sid, sym), b in books.items()
                 if (sid, sym) == (spec.strategy_id, spec.symbol)), Decimal(0))
    here = books.get((account, spec.strategy_id, spec.symbol))
    mine = here.position if here is not None else Decimal(0)
    if spec.side == "sell" and total > 0 and mine <= 0:
        return f"holds no {spec.symbol} of {spec.strategy_id} (a sell goes where the shares are)"
    if spec.side == "buy" and total < 0 and mine >= 0:
        return f"no {spec.symbol} short of {spec.strategy_id} (a cover goes where the short is)"
    return None


@dataclass(frozen=True, slots=True)
class Decision:
    """The record of one routing decision: the chosen account (None: refused), the rule,
    and each candidate in preference order with why it was skipped (None: chosen, or
    not reached)."""

    account: str | None
    rule: str
    candidates: tuple[tuple[str, str | None], ...]
    by_price: bool = False  # best_price: chosen over another account on price

    def candidates_line(self) -> str:
        def said(name: str, why: str | None) -> str:
            if name == self.account:
                return f"chosen ({why})" if why else "chosen"
            return why or "not tried"

        return "; ".join(f"{name}: {said(name, why)}" for name, why in self.candidates)

    def record(self) -> dict[str, str]:
        """The ROUTED event's detail in the order's history."""
        return {"account": self.account or "", "rule": self.rule,
                "candidates": self.candidates_line()}

    def refusal(self) -> str:
        """One line for the refused submit: each account and why."""
        shown = "; ".join(f"{name}: {why}" for name, why in self.candidates)
        return f"no account can take this order ({self.rule}: {shown})"

    @property
    def reason(self) -> str:
        """The metric's label: `preferred` (its first account), `failover`, `best_price`
        (chosen on price over a preferred one) or `refused`."""
        if self.account is None:
            return "refused"
        if self.by_price:
            return "best_price"
        first = self.candidates[0]
        return "preferred" if first[0] == self.account else "failover"


# Reasons that only make an account worse than another, not unable: a broker failing
# now (it may answer the next try) or a long queue. Skipped for a sound account; with none
# left, the first of them takes the order, which waits there as it would with one account.
SOFT = ("broker failing", "queue ")


def choose(rule: Rule, why_not: Callable[[str], str | None]) -> Decision:
    """The first of the rule's accounts that can take the order ("first" policy); if
    none is sound, the first one skipped only for a soft reason (SOFT)."""
    seen: list[tuple[str, str | None]] = []
    for name in rule.accounts:
        why = why_not(name)
        seen.append((name, why))
        if why is None:
            seen.extend((rest, None) for rest in rule.accounts[len(seen):])
            return Decision(account=name, rule=rule.name, candidates=tuple(seen))
    for i, (name, why) in enumerate(seen):
        if why is not None and why.startswith(SOFT):
            seen[i] = (name, f"{why}; no sound account: it waits here")
            return Decision(account=name, rule=rule.name, candidates=tuple(seen))
    return Decision(account=None, rule=rule.name, candidates=tuple(seen))


def choose_best(rule: Rule, why_not: Callable[[str], str | None],
                price: Callable[[str], Priced | str]) -> Decision:
    """The "best_price" policy: of the accounts that can take the order, the one with
    the best expected cost (domain/pricing.py). An account with no price to compare (a
    stale or slow quote, none at all) keeps its place in the preference order; the
    priced ones fill the other places best first. No account sound: as `choose`."""
    seen = [(name, why_not(name)) for name in rule.accounts]
    sound = [name for name, why in seen if why is None]
    if not sound:
        return choose(rule, dict(seen).__getitem__)
    prices = {name: price(name) for name in sound}
    best = iter(sorted((p.rank, rule.accounts.index(n), n) for n, p in prices.items()
                       if isinstance(p, Priced)))
    ranked = [n if isinstance(prices[n], str) else next(best)[2] for n in sound]
    chosen = ranked[0]

    def said(name: str, why: str | None) -> str:
        if why is not None:
            return why
        p = prices[name]
        return p.text if isinstance(p, Priced) else p

    shown = tuple((name, said(name, why)) for name, why in seen)
    return Decision(account=chosen, rule=rule.name, candidates=shown,
                    by_price=chosen != sound[0])
