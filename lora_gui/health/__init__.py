"""Data health: suspected wrong labels, near-duplicates and train/validation leaks, outliers, how
many more images each class needs, and a 2-D map, all from a frozen backbone's embeddings
(``embeddings``, cached in the workspace). ``audit.run_audit`` runs them all; the person's
decisions are written by ``data.fixes`` and honoured by every later load. No UI code."""
from .audit import KINDS, AuditResult, Finding, run_audit

__all__ = ["KINDS", "AuditResult", "Finding", "run_audit"]
