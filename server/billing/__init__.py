"""Billing: the seam between the sampling loop and whoever pays for it.

- `protocol`: `Billing` (one request's handle: reserve a wave, settle it, close) and
  `BillingProvider` (one per app: handles per request, tenant reports, reload, close), with
  the `WaveHold` both sides pass around.
- `unmetered`: grants everything and counts tokens (tenants with neither prices nor budgets).
- `ledger`: the budget ledger (controller.budget) behind the protocol: `LedgerBilling`, one
  request's handle, and `BudgetProvider`, which hands them out.
- `provider`: the app-wide side `BudgetProvider` is built on: the ledger (opened through
  `storage`), `prices` (each tenant's λ from the last figures), `gauges` (budget metrics),
  `reports` (the admin view), `spend_logs` (records and retention), `levels` (the key and user
  levels a request is budgeted and rate-limited at).
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
