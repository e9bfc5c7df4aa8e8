"""``orderflow settlement``: the providers' daily bills (fetch, match, report) and resolving the
differences found (:mod:`services.settlement`). Days are dates (``YYYY-MM-DD``) in the
provider's bill time zone: UTC for Stripe, Beijing for Alipay. Without ``--provider``, every
provider whose keys are configured."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import typer

from cli.common import Column, command, console, fail, print_json, print_listing, when
from domain.errors import ValidationError
from domain.money import format_money, money_json

settlement_app = typer.Typer(
    no_args_is_help=True, help="Settlement bills: fetch, match, report, resolve differences"
)

DATE_HELP = "The bill's day, YYYY-MM-DD (the provider's: UTC for Stripe, else Beijing time)"
PROVIDER_HELP = (
    "Provider whose bill to use (stripe, alipay or wechatpay; default: every one configured)"
)
MONEY_FIELDS = ("gross", "refunds", "fees", "adjustments", "net")


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValidationError("date", f"{value!r} is not a date (YYYY-MM-DD)") from None


def _providers(provider: str | None) -> tuple[str, ...]:
    from adapters.registry import SETTLEMENT_PROVIDERS, configured_settlement_providers

    known = ", ".join(SETTLEMENT_PROVIDERS)
    if provider is None:
        configured = configured_settlement_providers()
        if not configured:
            raise ValidationError("provider", f"none configured (set the keys of one of {known})")
        return configured
    if provider not in SETTLEMENT_PROVIDERS:
        raise ValidationError("provider", f"no settlement bills for {provider!r} (only {known})")
    return (provider,)


@settlement_app.command("fetch")
@command
def settlement_fetch(
    day: str = typer.Option(..., "--date", help=DATE_HELP),
    provider: str | None = typer.Option(None, help=PROVIDER_HELP),
) -> None:
    """Fetch and store the day's bill (a stored bill is not fetched again)."""
    from adapters.registry import settlement_source
    from services import settlement

    bad: list[str] = []
    for name in _providers(provider):
        for r in settlement.fetch(settlement_source(name), _day(day), now=datetime.now(UTC)):
            what = f"{r.provider} {r.day} {r.bill_type}"
            if r.status in ("stored", "already_stored"):
                console.print(f"{what}: {r.status.replace('_', ' ')}, {r.lines} lines")
            else:
                bad.append(f"{what}: {r.status.replace('_', ' ')}: {r.detail}")
    if bad:
        raise fail("; ".join(bad))


@settlement_app.command("match")
@command
def settlement_match(
    day: str = typer.Option(..., "--date", help=DATE_HELP),
    provider: str | None = typer.Option(None, help=PROVIDER_HELP),
) -> None:
    """Match the day's stored bill against payments and refunds; record the differences."""
    from adapters.registry import settlement_source
    from services.settlement_match import match
    from services.unit_of_work import unit_of_work

    for name in _providers(provider):
        account = settlement_source(name).account
        with unit_of_work() as session:
            r = match(session, name, account, _day(day), now=datetime.now(UTC))
        console.print(
            f"{r.provider} {r.day}: matched {r.lines} lines, {r.new_differences} new "
            f"differences ({r.differences} in all)"
        )


def _money_cell(name: str) -> Callable[[dict[str, Any]], str]:
    def cell(row: dict[str, Any]) -> str:
        value = row[name]
        return "" if value is None else format_money(value, row["currency"])

    return cell


FIGURE_COLUMNS = (
    Column("provider", "provider"), Column("bill", "bill_type"), Column("currency", "currency"),
    *(Column(f, _money_cell(f)) for f in MONEY_FIELDS), Column("lines", "lines"),
)  # fmt: skip
DIFFERENCE_COLUMNS = (
    Column("id", "id", ident=True), Column("provider", "provider"), Column("kind", "kind"),
    Column("ref", "ref", ident=True),
    Column("ours", _money_cell("ours")), Column("theirs", _money_cell("theirs")),
    Column("detail", "detail"),
    Column("resolved", lambda r: f"{r['resolved_by']}: {r['resolution_note']}"
           if r["resolved_at"] else "no"),
)  # fmt: skip


@settlement_app.command("report")
@command
def settlement_report(
    day: str = typer.Option(..., "--date", help=DATE_HELP),
    provider: str | None = typer.Option(None, help=PROVIDER_HELP),
    as_json: bool = typer.Option(
        False, "--json", help="Print the report as a JSON object (money as objects)"
    ),
) -> None:
    """Gross, refunds, fees and net per provider and currency, and every difference of the day."""
    from services.settlement_report import report
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        data = report(session, _day(day), provider)
    if as_json:
        print_json(_json(data))
        return
    console.print(f"[bold]Settlement {data['date']}[/]")
    for f in data["files"]:
        state = f"{f['lines']} lines, sha256 {f['sha256']}" if f["status"] == "stored" else (
            f"refused: {f['error']}"
        )  # fmt: skip
        matched = "matched" if f["matched_at"] else "not matched"
        console.print(f"{f['provider']} {f['bill_type']}: {f['status']} ({state}); {matched}",
                      markup=False, soft_wrap=True)  # fmt: skip
    if not data["files"]:
        console.print("no bill fetched for this day", markup=False)
    print_listing(data["figures"], FIGURE_COLUMNS, as_json=False, empty="no figures")
    print_listing(data["differences"], DIFFERENCE_COLUMNS, as_json=False, empty="no differences")


def _json(data: dict[str, Any]) -> dict[str, Any]:
    figures = [
        {**row, **{f: money_json(row[f], row["currency"]) for f in MONEY_FIELDS}}
        for row in data["figures"]
    ]
    files = [{**f, "fetched_at": when(f["fetched_at"]), "matched_at": when(f["matched_at"])}
             for f in data["files"]]  # fmt: skip
    differences = [
        {**d, "ours": None if d["ours"] is None else money_json(d["ours"], d["currency"]),
         "theirs": None if d["theirs"] is None else money_json(d["theirs"], d["currency"]),
         "created_at": when(d["created_at"]), "resolved_at": when(d["resolved_at"])}
        for d in data["differences"]
    ]  # fmt: skip
    return {"date": data["date"], "files": files, "figures": figures, "differences": differences}


@settlement_app.command("resolve")
@command
def settlement_resolve(
    difference_id: int = typer.Argument(..., help="The difference's id (from the report)"),
    note: str = typer.Option(..., help="What was found or done; kept with the difference"),
    by: str = typer.Option("cli", help="Who resolves it"),
) -> None:
    """Resolve a settlement difference with a note (once)."""
    from services.settlement_report import resolve
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        d = resolve(session, difference_id, actor=by, note=note, now=datetime.now(UTC))
    console.print(f"difference {d['id']} ({d['kind']} {d['ref']}) resolved by {d['resolved_by']}",
                  markup=False)  # fmt: skip
