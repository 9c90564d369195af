//! What the XML reading makes of the shapes real files take: quoting,
//! entities, CDATA, comments, `X-PRE-PROCESS`, and text that is not XML.
use super::*;

/// A tree of `vars.xml` and one profile, `sip_profiles/p.xml`, plus
/// `others` (path, text).
fn tree(vars: &str, profile: &str, others: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut files = vec![("vars.xml", vars), ("sip_profiles/p.xml", profile)];
    files.extend_from_slice(others);
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

fn hosts(d: &Discovered) -> Vec<(&str, &str)> {
    d.trunks
        .iter()
        .map(|t| (t.gateway.as_str(), t.host.as_str()))
        .collect()
}

#[test]
fn single_quoted_attributes() {
    let dir = tree(
        "<include><X-PRE-PROCESS cmd='set' data='port=5090'/></include>",
        r#"<profile name='q'><settings><param name='sip-port' value='$${port}'/>
           <param name="ws-binding" value=':5066'/></settings></profile>"#,
        &[],
    );
    let d = discover(dir.path());
    assert_eq!(d.port_numbers(), [5066, 5090], "{d:#?}");
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

#[test]
fn entities_are_read_as_what_they_stand_for() {
    let dir = tree(
        r#"<X-PRE-PROCESS cmd="set" data="tag=&quot;x&quot; &amp; y"/>"#,
        r#"<profile name="e"><gateways>
             <gateway name="a&amp;b"><param name="proxy" value="sip:10.1.2.3;x=&quot;y&quot;"/></gateway>
           </gateways>
           <settings><param name="sip-port" value="&#53;&#48;&#55;&#48;"/>
           <param name="user-agent-string" value="$${tag}"/>
           <param name="odd" value="AT&T &unknown;"/></settings></profile>"#,
        &[],
    );
    let d = discover(dir.path());
    assert_eq!(d.port_numbers(), [5070], "{d:#?}");
    assert_eq!(hosts(&d), [("a&b", "10.1.2.3")]);
    assert!(d.trunks[0].from.contains("gateway a&b proxy"), "{d:#?}");
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    // Variables hold the unescaped text.
    let (mut vars, mut tags, mut warnings) = (BTreeMap::new(), Vec::new(), Vec::new());
    read_tree(
        &dir.path().join("sip_profiles/p.xml"),
        dir.path(),
        0,
        &mut vars,
        &mut tags,
        &mut warnings,
        &mut Budget::new(),
    );
    let odd = tags.iter().find(|t| t.attr("name") == Some("odd")).unwrap();
    // Not XML, kept as written rather than dropped.
    assert_eq!(odd.attr("value"), Some("AT&T &unknown;"));
}

#[test]
fn cdata_is_text_not_tags() {
    let dir = tree(
        "<include/>",
        r#"<profile name="c"><settings>
           <![CDATA[<param name="sip-port" value="9999"/><X-PRE-PROCESS cmd="set" data="p=1"/>]]>
           <param name="sip-port" value="5070"/></settings></profile>"#,
        &[],
    );
    let d = discover(dir.path());
    assert_eq!(d.port_numbers(), [5070], "{d:#?}");
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

#[test]
fn a_closing_bracket_inside_a_value_does_not_end_the_tag() {
    let dir = tree(
        "<include/>",
        r#"<profile name="g"><gateways>
             <gateway name="t"><param note="a > b" name="proxy" value="10.1.2.4"/></gateway>
           </gateways><settings>
             <param name="sip-port" value="5070" note='>'/></settings></profile>"#,
        &[],
    );
    let d = discover(dir.path());
    assert_eq!(hosts(&d), [("t", "10.1.2.4")], "{d:#?}");
    assert_eq!(d.port_numbers(), [5070]);
}

#[test]
fn tags_in_comments_are_ignored() {
    let dir = tree(
        r#"<include>
  <!-- <X-PRE-PROCESS cmd="set" data="port=9999"/> -->
  <X-PRE-PROCESS cmd="set" data="port=5070"/>
  <!--<X-PRE-PROCESS cmd="include" data="nowhere/*.xml"/>-->
  <!-- a comment -- with dashes <X-PRE-PROCESS cmd="set" data="port=9998"/> -->
</include>"#,
        r#"<profile name="k"><gateways>
             <!-- <gateway name="x"><param name="proxy" value="198.51.100.1"/></gateway> -->
           </gateways><settings>
             <!--<param name="sip-port" value="9997"/>-->
             <param name="sip-port" value="$${port}"/></settings></profile>"#,
        &[],
    );
    let d = discover(dir.path());
    assert_eq!(d.port_numbers(), [5070], "{d:#?}");
    assert!(d.trunks.is_empty(), "{d:#?}");
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

/// `set` in order (a later one wins, an included file's are seen after
/// its include), `include` relative to the including file, with
/// variables in its pattern, and the long form `<X-PRE-PROCESS ...></X-PRE-PROCESS>`.
#[test]
fn pre_process_set_and_include() {
    let dir = tree(
        r#"<include>
  <X-PRE-PROCESS cmd="set" data="port=1"/>
  <X-PRE-PROCESS cmd="set" data="sub=more"></X-PRE-PROCESS>
  <X-PRE-PROCESS cmd="include" data="$${sub}/*.xml"/>
  <X-PRE-PROCESS cmd="stun-set" data="tls_port = 5071"/>
</include>"#,
        r#"<profile name="i"><gateways><X-PRE-PROCESS cmd="include" data="p/*.xml"/></gateways>
           <settings><param name="sip-port" value="$${port}"/><param name="tls" value="true"/>
           <param name="tls-sip-port" value="$${tls_port}"/></settings></profile>"#,
        &[
            (
                "more/a.xml",
                r#"<include><X-PRE-PROCESS cmd="set" data="port=5060"/></include>"#,
            ),
            (
                "more/b.xml",
                r#"<X-PRE-PROCESS cmd="set" data="port=5070"/><X-PRE-PROCESS cmd="set" data="host=10.1.2.5"/>"#,
            ),
            (
                "sip_profiles/p/gw.xml",
                r#"<gateway name="gw"><param name="proxy" value="$${host}"/></gateway>
                   <gateway name="10.1.2.6"/>"#,
            ),
        ],
    );
    let d = discover(dir.path());
    assert_eq!(d.port_numbers(), [5070, 5071], "{d:#?}");
    assert_eq!(hosts(&d), [("gw", "10.1.2.5"), ("10.1.2.6", "10.1.2.6")]);
    // A gateway that is only a name: named from its own file.
    assert_eq!(
        d.trunks[1].from,
        "sip_profiles/p/gw.xml: gateway 10.1.2.6 name"
    );
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

/// What comes before text that is not XML stands; the rest of that file
/// is not read, and that is said. Other files are read as ever.
#[test]
fn text_that_is_not_xml_ends_its_file_only() {
    let dir = tree(
        r#"<X-PRE-PROCESS cmd="set" data="port=5070"/>"#,
        r#"<profile name="b"><settings><param name="sip-port" value="$${port}"/>
           <param name="ws-binding" value=":5066/></settings></profile>"#,
        &[(
            "sip_profiles/z.xml",
            r#"<profile name="z"><settings><param name="sip-port" value="5090"/></settings></profile>"#,
        )],
    );
    let d = discover(dir.path());
    assert_eq!(d.port_numbers(), [5070, 5090], "{d:#?}");
    let said = |what: &str| d.warnings.iter().filter(|w| w.contains(what)).count();
    assert_eq!(
        said("sip_profiles/p.xml: not XML from byte"),
        1,
        "{:?}",
        d.warnings
    );
}
