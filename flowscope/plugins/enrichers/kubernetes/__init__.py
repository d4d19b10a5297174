"""The `kubernetes` enricher: Pods, Services and NetworkPolicy attribution from an inventory."""
