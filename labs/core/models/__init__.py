"""Offline models for the workbook, and finding the model a lab should run on."""

from labs.core.models.resolve import DEFAULT_MODEL, ModelNotFoundError, ResolvedModel, resolve_model

__all__ = ["DEFAULT_MODEL", "ModelNotFoundError", "ResolvedModel", "resolve_model"]
