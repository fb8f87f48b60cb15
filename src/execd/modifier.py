"""A replace at a broker that modifies in place (IB): the same order, the same
client_order_id and broker id, with new terms and a MODIFIED event in its history.

Alpaca's replace makes a new order (a PATCH; the old one becomes REPLACED), so the
daemon records the replacement PENDING before it is sent (submitter.py). IB changes the
order itself (placeOrder with the same orderId): nothing new is recorded before it is
sent, because sending it twice changes nothing (the same terms again), and a modify
whose answer is lost is settled by looking the order up and comparing its terms. The
risk gate checked the order as it will be after (risk.py); the submitter runs this under
the order's lock, so a cancel or a send of the same order waits for it.

A refused modify (IB's 104: the order filled first; 321: a change IB will not take)
leaves the order as the broker says: it is looked up and its fills applied, so nothing
that happened meanwhile is lost; the caller hears the refusal with that order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from execd.broker.base import BrokerError, BrokerOrder, BrokerRejected
from execd.domain.families import replace_changes
from execd.domain.news import News
from execd.domain.orders import Order, OrderSpec
from execd.messages import ModifyOrder, ModifyOutcome
from execd.obs import logging
from execd.store import StorageUnavailable

if TYPE_CHECKING:
    from execd.submitting import Submitter

log = logging.get("execd.modifier")


async def modify(sub: Submitter, cmd: ModifyOrder) -> None:
    """Modify `cmd.order` into `cmd.spec` at the broker; answer `cmd.outcome`."""
    with cmd.outcome:
        try:
            outcome = await _modify(sub, cmd)
        except StorageUnavailable as e:
            log.error("cannot record a modify's outcome: the poller will bring the order "
                      "up to date", client_order_id=cmd.order.client_order_id, error=str(e))
            outcome = ModifyOutcome(order=cmd.order, refused=(
                "the daemon cannot write to its disk: whether the broker took the change "
                "is not recorded; query the order again later"))
        cmd.outcome.send_nowait(outcome)


async def _modify(sub: Submitter, cmd: ModifyOrder) -> ModifyOutcome:
    cid = cmd.order.client_order_id
    async with sub.owning(cid):
        current = sub.book.open.get(cid)
        if current is None or current.broker_order_id is None:
            now = current or await sub.book.get(cid) or cmd.order
            return ModifyOutcome(order=now, refused=(
                f"order {cid} is {now.state.value}: only an open order at the broker can "
                "be modified"))
        broker_id = current.broker_order_id
        try:
            found = await sub.broker.replace_order(
                broker_id, replace_changes(current, Order(spec=cmd.spec)), cid)
        except BrokerRejected as e:
            log.info("the broker refused a modify", client_order_id=cid, error=str(e))
            return ModifyOutcome(order=await _as_the_broker_says(sub, current),
                                 refused=f"broker: {e}")
        except BrokerError as e:  # ambiguous, unavailable, withdrawn: look it up
            log.warning("modify outcome unknown: looking the order up", client_order_id=cid,
                        error=str(e))
            looked = await _look_up(sub, broker_id)
            if looked is None or not has_terms(looked, cmd.spec):
                after = await _as_the_broker_says(sub, current, looked)
                return ModifyOutcome(order=after, refused=(
                    f"the modify's outcome is unknown ({e}) and the broker shows the old "
                    "terms: the order is as the broker has it; try again"))
            found = looked
        after = await sub.book.modify(cid, cmd.spec) or current
        log.info("order modified in place", client_order_id=cid, broker_order_id=broker_id)
        return ModifyOutcome(order=await sub.book.apply(News.of(found, cid)) or after)


async def _look_up(sub: Submitter, broker_id: str) -> BrokerOrder | None:
    try:
        return await sub.broker.get_order(broker_id)
    except BrokerError as e:
        log.info("cannot look an order up now; the poller will", broker_order_id=broker_id,
                 error=str(e))
        return None


async def _as_the_broker_says(sub: Submitter, order: Order,
                              found: BrokerOrder | None = None) -> Order:
    """The order after the broker's view of it is applied (its fills counted)."""
    found = found or await _look_up(sub, order.broker_order_id or "")
    if found is None:
        return order
    return await sub.book.apply(News.of(found, order.client_order_id)) or order


def has_terms(found: BrokerOrder, spec: OrderSpec) -> bool:
    """Whether the broker's order carries `spec`'s terms (quantity, prices, time in
    force): a modify whose answer was lost took effect."""
    return (found.qty == spec.qty and found.limit_price == spec.limit_price
            and (spec.type not in ("stop", "stop_limit") or found.stop_price == spec.stop_price)
            and found.time_in_force == spec.time_in_force)
