"""Fused fast paths: one file per fused op, each tested equal to the plain modules it replaces.

Selected from config and off by default (``backbone.fused_tail=true``); the plain path stays the
reference. See DESIGN.md, "Performance", for the pass counting behind them.
"""
