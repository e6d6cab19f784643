"""Deployments: named serving targets of a tenant and how their traffic splits over versions."""
