-- GET a pod's credentials from the EKS Pod Identity endpoint, as an SDK does with
-- AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE [K-06]:
-- the service account token (a JWT) in Authorization.
wrk.method = "GET"
wrk.headers["Authorization"] = os.getenv("IMDS_POD_TOKEN")
