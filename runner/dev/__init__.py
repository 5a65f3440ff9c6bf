"""`python -m runner dev`: the whole stack on one machine, with an embedded Redis."""
