"""Tests for isp."""
