-- GET an ECS task's credentials in the full-URI flow, as an SDK does with
-- AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN [K-02] [K-03]:
-- the token verbatim in Authorization, Host the loopback address of the URI.
wrk.method = "GET"
wrk.headers["Authorization"] = os.getenv("IMDS_CONTAINER_TOKEN")
