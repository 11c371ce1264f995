"""DiR-ISP."""
