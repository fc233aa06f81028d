//! Macros shared by the copy modules: the metadata of a HEAD/GET response, and the same
//! metadata set on a PUT or CreateMultipartUpload request.

macro_rules! meta_of {
    ($out:expr) => {{
        let o = &$out;
        Meta {
            content_type: o.content_type().map(str::to_string),
            cache_control: o.cache_control().map(str::to_string),
            content_disposition: o.content_disposition().map(str::to_string),
            content_encoding: o.content_encoding().map(str::to_string),
            content_language: o.content_language().map(str::to_string),
            user: o
                .metadata()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }};
}

macro_rules! with_meta {
    ($req:expr, $meta:expr) => {{
        let m: &Meta = $meta;
        let user: HashMap<String, String> = m.user.clone().into_iter().collect();
        $req.set_content_type(m.content_type.clone())
            .set_cache_control(m.cache_control.clone())
            .set_content_disposition(m.content_disposition.clone())
            .set_content_encoding(m.content_encoding.clone())
            .set_content_language(m.content_language.clone())
            .set_metadata((!user.is_empty()).then_some(user))
    }};
}
