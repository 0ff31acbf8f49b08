#!/usr/bin/env bash
# Calling providers through keyward with curl: no credential anywhere in the app.
set -euo pipefail
SOCK=${KEYWARD_APP_SOCK:-/run/keyward/app.sock}
TENANT=${TENANT:-acme}

# Form 1: provider in the path, tenant in a header (Vapi: list assistants).
curl -s --unix-socket "$SOCK" -H "Keyward-Tenant: $TENANT" 'http://keyward/vapi/assistant?limit=10'

# Form 2: tenant in the path, for SDKs that only take a base URL (Twilio: send an SMS;
# "_" becomes the tenant's Account SID).
curl -s --unix-socket "$SOCK" -X POST "http://keyward/t/$TENANT/twilio/2010-04-01/Accounts/_/Messages.json" \
  --data-urlencode 'To=+15555550100' --data-urlencode 'From=+15555550199' --data-urlencode 'Body=Hello'

# ElevenLabs streaming TTS: chunks arrive as they are produced.
curl -s --unix-socket "$SOCK" -H "Keyward-Tenant: $TENANT" -H 'Content-Type: application/json' \
  -d '{"text":"Hello there","model_id":"eleven_turbo_v2"}' \
  'http://keyward/elevenlabs/v1/text-to-speech/21m00Tcm4TlvDq8ikWAM/stream' -o hello.mp3
