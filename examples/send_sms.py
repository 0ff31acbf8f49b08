#!/usr/bin/env python3
"""Sends an SMS with the official Twilio SDK through keyward.

The app holds no Twilio credential: it talks to keyward's mTLS app listener with its own
client certificate, keyward picks the tenant's Twilio credential, fills in the Account SID
("_" in the path) and calls Twilio over HTTPS.

    send_sms.py --keyward https://localhost:7443 --tenant acme --cert app.pem --key app.key \
        --ca keyward-ca.pem --to +15555550100 --from +15555550199 --body "Your appointment is at 3pm"
"""

import argparse
import json

from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--keyward", required=True, help="keyward's mTLS app listener, e.g. https://localhost:7443")
    p.add_argument("--tenant", required=True)
    p.add_argument("--cert", required=True, help="this app's client certificate")
    p.add_argument("--key", required=True)
    p.add_argument("--ca", required=True, help="the CA that signed keyward's listener certificate")
    p.add_argument("--to", required=True)
    p.add_argument("--from", dest="from_", required=True)
    p.add_argument("--body", required=True)
    a = p.parse_args()

    http = TwilioHttpClient()
    http.session.cert = (a.cert, a.key)
    http.session.verify = a.ca
    # keyward is local: ignore *_PROXY and REQUESTS_CA_BUNDLE from the environment, which
    # would otherwise override the CA above.
    http.session.trust_env = False
    # "_" as the Account SID: keyward replaces it with the tenant's own. The password is a
    # placeholder: keyward drops the SDK's Authorization header and injects the real one.
    client = Client("_", "injected-by-keyward", http_client=http)
    client.api.base_url = f"{a.keyward.rstrip('/')}/t/{a.tenant}/twilio"
    msg = client.messages.create(to=a.to, from_=a.from_, body=a.body)
    print(json.dumps({"sid": msg.sid, "status": msg.status}))


if __name__ == "__main__":
    main()
