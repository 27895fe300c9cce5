# provision/lib/cloud-vultr.sh: the Vultr API v2 adapter for provision/cloud. Owns the
# Vultr request shapes: POST /instances (one instance per request, user_data base64),
# GET /instances?tag=&per_page=&cursor= (cursor pagination via meta.links.next),
# DELETE /instances/{id}. Sourced by provision/cloud, never run on its own.
# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables set here are read by provision/cloud

vultr_setup() {
    PROVIDER_NAME=Vultr
    TOKEN_VAR=VULTR_API_KEY
    URL_VAR=VANTAGE_VULTR_API_URL
    DEFAULT_URL=https://api.vultr.com/v2
    # vc2-1c-1gb: the smallest regular cloud compute plan with a public IPv4 address.
    DEFAULT_SIZE=vc2-1c-1gb
    # os_id 2136: "Debian 12 x64 (bookworm)".
    DEFAULT_IMAGE=2136
    # Vultr does not document a user-data limit; 64 KiB of raw data is assumed.
    USER_DATA_LIMIT=65536
    USER_DATA_TEXT=0
    ERROR_JQ='.error // empty | tostring'
    ID_RE='^[A-Za-z0-9-]{1,64}$'
    DELETE_TEMPLATE='/instances/<id>'
    TAG_WORD=tag
}

vultr_validate_create() {
    if ! [[ $IMAGE =~ ^[1-9][0-9]{0,8}$ ]]; then
        usage_error "Vultr --image is a numeric os_id (2136 is Debian 12 x64), not '$IMAGE'"
    fi
}

vultr_create() {
    local name
    # Vultr takes user_data base64-encoded.
    base64 -w0 <"$USER_DATA" >"$WORK/user-data.b64"
    for name in "${NAMES[@]}"; do
        jq -n \
            --arg region "$REGION" \
            --arg plan "$SIZE" \
            --argjson os_id "$IMAGE" \
            --arg name "$name" \
            --arg tag "$TAG" \
            --rawfile user_data "$WORK/user-data.b64" \
            '{region: $region, plan: $plan, os_id: $os_id, label: $name, hostname: $name,
              tags: [$tag], user_data: $user_data, enable_ipv6: true, backups: "disabled",
              activation_email: false}' >"$WORK/body.json"
        api_request POST "$BASE_URL/instances" "$WORK/body.json"
        if [ "$DRY_RUN" = 1 ]; then
            continue
        fi
        response_json
        jq -r "$JQ_CELLS"' .instance | [.id, .label, .region, .main_ip, .status] | cells' \
            "$WORK/response" >>"$WORK/rows.tsv"
        CREATED=$((CREATED + 1))
        ON_FAIL_HINT="$CREATED of ${#NAMES[@]} instances were created before the failure; remove them with: $PROG vultr destroy --tag $TAG"
    done
}

vultr_list() {
    local cursor="" page=0 query
    local -a pages=()
    while :; do
        page=$((page + 1))
        query="per_page=100"
        if [ -n "$TAG" ]; then
            query+="&tag=$(uri "$TAG")"
        fi
        if [ -n "$cursor" ]; then
            query+="&cursor=$(uri "$cursor")"
        fi
        api_request GET "$BASE_URL/instances?$query"
        if [ "$DRY_RUN" = 1 ]; then
            printf '# then the same request with &cursor=<meta.links.next> while the answer names a next page\n\n'
            return 0
        fi
        response_json
        jq '.instances // []' "$WORK/response" >"$WORK/page.$page.json"
        pages+=("$WORK/page.$page.json")
        cursor=$(jq -r '.meta.links.next // ""' "$WORK/response")
        if [ -z "$cursor" ]; then
            break
        fi
        if [ "$page" -ge "$MAX_PAGES" ]; then
            die "Vultr kept answering with a next page after $MAX_PAGES pages; giving up"
        fi
    done
    jq -s 'add // []' "${pages[@]}" >"$WORK/items.json"
}

vultr_rows() {
    jq -r "$JQ_CELLS"' .[] | [.id, .label, .region, .main_ip, .status] | cells' "$WORK/items.json"
}

vultr_id_name() {
    jq -r "$JQ_CELLS"' .[] | [.id, .label] | cells' "$WORK/items.json"
}

vultr_destroy_id() {
    api_request DELETE "$BASE_URL/instances/$(uri "$1")"
}
