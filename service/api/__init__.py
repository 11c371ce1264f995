"""The FastAPI application: ``service.api.app.create_app`` builds it; routes are in ``service.api.routes``."""
