"""One module per resource; each holds an ``APIRouter`` that ``service.api.app`` includes in path order."""
