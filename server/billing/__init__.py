"""Billing: the seam between the sampling loop and whoever pays for it.

- `protocol`: `Billing` (one request's handle: reserve a wave, settle it, close) and
  `BillingProvider` (one per app: handles per request, tenant reports, reload, close), with
  the `WaveHold` both sides pass around.
- `unmetered`: grants everything and counts tokens (tenants with neither prices nor budgets).
- `ledger`: the budget ledger (controller.budget) behind the protocol.
"""

from server.billing.ledger import BudgetProvider, LedgerBilling
from server.billing.protocol import Billing, BillingProvider, WaveHold
from server.billing.unmetered import UnmeteredBilling, UnmeteredProvider

__all__ = [
    "Billing",
    "BillingProvider",
    "BudgetProvider",
    "LedgerBilling",
    "UnmeteredBilling",
    "UnmeteredProvider",
    "WaveHold",
]
