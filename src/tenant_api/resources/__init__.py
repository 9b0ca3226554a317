"""The generic tenant resource (base.py, pagination.py, schemas.py, lifecycle.py) and one
module per area. Each area module declares its routes as ``ROUTES``; tenant_api.routes
lists them all. This package imports nothing itself, so importing the generic resource
loads no area.
"""
