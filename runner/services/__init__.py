"""The operations behind the API: invoke, control, job views, fleet, metrics, callbacks, limits."""
