-- GET one path with an IMDSv2 token, as an SDK does after its PUT [A-01].
wrk.method = "GET"
wrk.headers["X-aws-ec2-metadata-token"] = os.getenv("IMDS_TOKEN")
