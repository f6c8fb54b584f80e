# Regenerate with: python llem_mlflow/energy/data/make_countries.py > llem_mlflow/energy/data/carbon_countries.tsv
"""Writes the countries whose grid CodeCarbon can price: its global energy-mix table, one
`ISO3<TAB>name` line each, sorted. A test checks the shipped file against the installed CodeCarbon."""

from codecarbon.input import DataSource

import codecarbon

mix = DataSource().get_global_energy_mix_data()
print(f"# CodeCarbon {codecarbon.__version__}: countries of its global energy-mix table (ISO 3166-1 alpha-3, name)")
for code in sorted(mix):
    print(f"{code}\t{mix[code]['country_name']}")
