//! OCI distribution (registry) client.
