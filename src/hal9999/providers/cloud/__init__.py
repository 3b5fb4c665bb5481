"""Cloud providers that make one machine per sandbox (``digitalocean``, ``morph``): the
shared HTTP client, cloud host and spend caps, and each vendor's provider and API."""
