"""Tests for models."""
