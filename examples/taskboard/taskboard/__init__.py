"""A multi-tenant task board on one Unisock connection per page (the example application)."""
