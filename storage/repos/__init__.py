"""Query functions over the ORM, one module per aggregate. Every tenant query takes org_id."""
