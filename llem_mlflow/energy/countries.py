"""The countries whose grid CodeCarbon can price, from a table shipped with the package.

`energy/data/carbon_countries.tsv` is CodeCarbon's global energy-mix table (codes and names),
written by `energy/data/make_countries.py`; a test checks it against the installed CodeCarbon.
Reading it costs nothing, so the config check needs no CodeCarbon import (`validate` stays fast).
"""

from __future__ import annotations

import difflib
import functools

TABLE = "carbon_countries.tsv"


@functools.cache
def carbon_countries() -> dict[str, str]:
    """ISO 3166-1 alpha-3 code -> country name."""
    from importlib.resources import files

    text = files("llem_mlflow.energy").joinpath("data", TABLE).read_text(encoding="utf-8")
    rows = (line.split("\t") for line in text.splitlines() if line and not line.startswith("#"))
    return {code: name for code, name in rows}


def country_problem(code: str) -> str | None:
    """Why CodeCarbon cannot price this country's grid, or None when it can."""
    countries = carbon_countries()
    if code in countries:
        return None
    close = [f"{c} ({countries[c]})" for c in difflib.get_close_matches(code, list(countries), n=3, cutoff=0.6)]
    hint = f" - did you mean {' or '.join([', '.join(close[:-1]), close[-1]] if len(close) > 1 else close)}?" if close else "."
    return (
        f"{code!r} is not a country in CodeCarbon's energy-mix table{hint} "
        "Use an ISO 3166-1 alpha-3 code such as USA, FRA, DEU, or set energy.codecarbon: false"
    )
