"""Column shapes shared by the tables."""

# Money columns: costs are Decimal(20, 10) (1e-10 USD, enough for one cheap token);
# prices and limits Decimal(14, 6). (Spelled out on each field for the type checker.)
COST_FIELD = {"max_digits": 20, "decimal_places": 10}
PRICE_FIELD = {"max_digits": 14, "decimal_places": 6}
