-- The token PUT every SDK starts with [T-01], TTL as botocore asks [T-16].
wrk.method = "PUT"
wrk.path = "/latest/api/token"
wrk.headers["X-aws-ec2-metadata-token-ttl-seconds"] = "21600"
