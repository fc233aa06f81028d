//! The builders against hand-written expectations: identifiers from the platform's own tests
//! (`test_documents.py`), hashes from `sha1sum`, documents written out field by field.

use serde_json::json;

use super::*;

#[test]
fn studio_ids_match_the_platform_tests() {
    // Expected values copied from openedx-platform's content/search/tests/test_documents.py.
    assert_eq!(
        studio_id("block-v1:edX+toy+2012_Fall+type@problem+block@Test_Problem"),
        "block-v1edxtoy2012_falltypeproblemblocktest_problem-f46b6f1e"
    );
    assert_eq!(
        studio_id("block-v1:edX+toy+2012_Fall+type@html+block@toyjumpto"),
        "block-v1edxtoy2012_falltypehtmlblocktoyjumpto-efb9c601"
    );
    assert_eq!(
        studio_id("block-v1:edX+toy+2012_Fall+type@video+block@Welcome"),
        "block-v1edxtoy2012_falltypevideoblockwelcome-0c9fd626"
    );
    assert_eq!(
        studio_id("lb:edX:2012_Fall:html:text2"),
        "lbedx2012_fallhtmltext2-4bb47d67"
    );
}

#[test]
fn slugify_follows_django() {
    assert_eq!(slugify(" Hello, World! "), "hello-world");
    assert_eq!(slugify("a -- b__"), "a-b");
    assert_eq!(slugify("Électronique"), "electronique");
    assert_eq!(slugify("数据 x"), "x");
}

#[test]
fn pk_is_sha1_of_the_id() {
    // `printf %s course-v1:edX+DemoX+Demo_Course | sha1sum`
    assert_eq!(
        id2pk("course-v1:edX+DemoX+Demo_Course"),
        "bb6d638a296059742509a0d319ddf8456b6dbf9a"
    );
    assert_eq!(id2pk("1"), "356a192b7913b04c54574d18c28d46e6395428ab");
}

#[test]
fn html_text_as_the_platform_extracts_it() {
    assert_eq!(
        html_to_text("<p>HTML <b>body</b> with &amp; entities &lt;script&gt;</p>"),
        "HTML body with & entities <script>"
    );
    assert_eq!(html_to_text("a < b and c"), "a < b and c");
    assert_eq!(
        html_to_text("x &#233;&#xE9; &unknown; y"),
        "x éé &unknown; y"
    );
    assert_eq!(
        strip_html_content_to_text("<p>Line\n\n  two&nbsp;three http://x.org</p>"),
        "Line two three http: x.org"
    );
    assert_eq!(
        soup_text("<script>alert(1)</script><p>kept</p><style>p{}</style>"),
        "kept"
    );
    assert_eq!(
        capa_text(
            "<problem>What is a test?<multiplechoiceresponse></multiplechoiceresponse></problem>"
        ),
        "What is a test?"
    );
    assert_eq!(
        capa_text("<problem><p>Q</p><solution><p>secret</p></solution><demandhint><hint>h</hint></demandhint></problem>"),
        "Q"
    );
    assert_eq!(
        problem_types("<problem><stringresponse/><multiplechoiceresponse></multiplechoiceresponse><stringresponse/></problem>"),
        vec!["multiplechoiceresponse", "stringresponse"]
    );
}

#[test]
fn modes_follow_modes_for_course() {
    let mode = |slug: &str, expiration: Option<Micros>| CourseMode {
        slug: slug.into(),
        currency: "usd".into(),
        expiration,
    };
    let now = 2_000_000_000_000_000;
    assert_eq!(
        course_mode_slugs(
            &[
                mode("verified", Some(now + 1)),
                mode("audit", None),
                mode("credit", None),
                mode("honor", Some(now - 1))
            ],
            now
        ),
        vec!["audit", "verified"]
    );
    assert_eq!(
        course_mode_slugs(&[mode("credit", None)], now),
        vec!["audit"]
    );
}

fn block(t: &str, id: &str, name: Option<&str>, children: &[(&str, &str)]) -> Block {
    Block {
        block_type: t.into(),
        block_id: id.into(),
        display_name: name.map(str::to_string),
        children: children
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        edited_on: Some(1_700_000_000_500_000),
        ..Block::default()
    }
}

/// course > chapter "Week 1" (start 2024-01-01) > sequential "Lesson" > vertical "Unit" >
/// html (no name) + problem + a discussion block (not indexed by courseware search).
fn small_course() -> CourseTree {
    let mut chapter = block("chapter", "w1", Some("Week 1"), &[("sequential", "s1")]);
    chapter.start = Some(1_704_067_200_000_000);
    let mut html = block("html", "h1", None, &[]);
    html.data = Some("<p>Hello&nbsp;<b>world</b></p><script>x()</script>".into());
    let mut problem = block("problem", "p1", Some("Quiz"), &[]);
    problem.data = Some("<problem><p>2+2?</p><numericalresponse answer=\"4\"/></problem>".into());
    let blocks = vec![
        block(
            "course",
            "course",
            Some("Small <Course>"),
            &[("chapter", "w1")],
        ),
        chapter,
        block("sequential", "s1", Some("Lesson"), &[("vertical", "u1")]),
        block(
            "vertical",
            "u1",
            Some("Unit"),
            &[("html", "h1"), ("problem", "p1"), ("discussion", "d1")],
        ),
        html,
        problem,
        block("discussion", "d1", Some("Talk"), &[]),
    ];
    CourseTree {
        course_id: "course-v1:Org+Small+Run".into(),
        root: ("course".into(), "course".into()),
        blocks: blocks
            .into_iter()
            .map(|b| ((b.block_type.clone(), b.block_id.clone()), b))
            .collect(),
    }
}

#[test]
fn courseware_documents_of_a_small_course() {
    let mut docs = Vec::new();
    courseware_documents(&small_course(), |d| docs.push(d));
    let ids: Vec<&str> = docs.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "block-v1:Org+Small+Run+type@chapter+block@w1",
            "block-v1:Org+Small+Run+type@sequential+block@s1",
            "block-v1:Org+Small+Run+type@vertical+block@u1",
            "block-v1:Org+Small+Run+type@html+block@h1",
            "block-v1:Org+Small+Run+type@problem+block@p1",
        ],
        "the discussion block has no index dictionary and no children"
    );
    assert_eq!(
        docs[3],
        json!({
            "course": "course-v1:Org+Small+Run",
            "org": "Org",
            "id": "block-v1:Org+Small+Run+type@html+block@h1",
            "content": {"html_content": "Hello world", "display_name": "Text"},
            "content_type": "Text",
            "start_date": 1704067200.0,
            "start_date__utcoffset": 0,
            "course_name": "Small <Course>",
            "location": ["Week 1", "Lesson", "Unit"],
            "_pk": id2pk("block-v1:Org+Small+Run+type@html+block@h1"),
        })
    );
    assert_eq!(
        docs[4]["content"],
        json!({"capa_content": "2+2?", "display_name": "Quiz"})
    );
    assert_eq!(docs[4]["problem_types"], json!(["numericalresponse"]));
    assert_eq!(docs[0]["location"], json!(["Week 1"]));
    assert_eq!(docs[0]["content_type"], json!("Sequence"));
}

#[test]
fn studio_documents_of_a_small_course() {
    let mut docs = Vec::new();
    studio_documents(&small_course(), Some(7), |d| docs.push(d));
    assert_eq!(docs.len(), 6, "every block below the course");
    let html = &docs[3];
    assert_eq!(
        *html,
        json!({
            // BLAKE2b-32 from Python's hashlib.blake2b(key, digest_size=4).
            "id": "block-v1orgsmallruntypehtmlblockh1-511d99fa",
            "type": "course_block",
            "usage_key": "block-v1:Org+Small+Run+type@html+block@h1",
            "block_id": "h1",
            "display_name": "Text",
            "block_type": "html",
            "context_key": "course-v1:Org+Small+Run",
            "org": "Org",
            "access_id": 7,
            "breadcrumbs": [
                {"display_name": "Small <Course>"},
                {"display_name": "Week 1", "usage_key": "block-v1:Org+Small+Run+type@chapter+block@w1"},
                {"display_name": "Lesson", "usage_key": "block-v1:Org+Small+Run+type@sequential+block@s1"},
                {"display_name": "Unit", "usage_key": "block-v1:Org+Small+Run+type@vertical+block@u1"},
            ],
            "modified": 1700000000.5,
            "content": {"html_content": "Hello world"},
            "description": "Hello world",
            "tags": {},
        })
    );
    assert_eq!(
        docs[4]["content"],
        json!({"capa_content": "2+2?", "problem_types": ["numericalresponse"]})
    );
    assert_eq!(docs[5]["content"], json!({}));
    assert!(docs[5].get("description").is_none());
}

#[test]
fn course_info_document_drops_falsy_values() {
    let overview = CourseOverview {
        id: "course-v1:Org+Small+Run".into(),
        display_name: Some("ignored: the course block wins".into()),
        start: Some(1_704_067_200_250_000),
        end: None,
        enrollment_start: None,
        enrollment_end: Some(1_704_153_600_000_000),
        advertised_start: Some(String::new()),
        course_image_url: "/asset-v1:Org+Small+Run+type@asset+block@images_course_image.jpg".into(),
        effort: Some("4 hours".into()),
        short_description: None,
        language: Some("fr".into()),
        invitation_only: false,
        catalog_visibility: Some("both".into()),
    };
    let tree = small_course();
    let mut about = BTreeMap::new();
    about.insert(
        "overview".to_string(),
        "<section><h2>About</h2>\n<p>Learn   things</p></section>".to_string(),
    );
    let doc = course_info_document(
        &overview,
        tree.root_block(),
        &about,
        &["audit".into(), "verified".into()],
    )
    .unwrap();
    assert_eq!(
        doc,
        json!({
            "id": "course-v1:Org+Small+Run",
            "course": "course-v1:Org+Small+Run",
            "image_url": "/asset-v1:Org+Small+Run+type@asset+block@images_course_image.jpg",
            "org_image_url": "",
            "start": 1704067200.25,
            "start__utcoffset": 0,
            "effort": "4 hours",
            "number": "Small",
            "enrollment_end": 1704153600.0,
            "enrollment_end__utcoffset": 0,
            "org": "Org",
            "modes": ["audit", "verified"],
            "language": "fr",
            "catalog_visibility": "both",
            "content": {
                // `<Course>` is a start tag to Python's HTMLParser: stripped.
                "display_name": "Small ",
                "overview": "About Learn things",
                "number": "Small",
            },
            "_pk": id2pk("course-v1:Org+Small+Run"),
        })
    );
}

#[test]
fn forum_documents() {
    let thread = ForumThread {
        id: 12,
        course_id: "course-v1:Org+Small+Run".into(),
        title: "Help <b>me</b>".into(),
        body: "<p>HTML <b>body</b> &amp; more</p>".into(),
        context: "course".into(),
        commentable_id: None,
    };
    assert_eq!(
        thread_document(&thread),
        json!({
            "id": "12",
            "_pk": id2pk("12"),
            "context": "course",
            "course_id": "course-v1:Org+Small+Run",
            "commentable_id": null,
            "body": "HTML body & more",
            "title": "Help <b>me</b>",
        })
    );
    let comment = ForumComment {
        id: 1,
        course_id: "c".into(),
        body: "plain".into(),
        comment_thread_id: 12,
    };
    assert_eq!(
        comment_document(&comment),
        json!({
            "id": "1",
            "_pk": "356a192b7913b04c54574d18c28d46e6395428ab",
            "context": "course",
            "course_id": "c",
            "commentable_id": null,
            "body": "plain",
            "title": null,
            "comment_thread_id": 12,
        })
    );
}
