"""Lineage: which teachers a student may learn from (licence, origin: the policy gate) and
what the student owes them."""
