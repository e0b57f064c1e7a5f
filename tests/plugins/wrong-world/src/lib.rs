//! A valid component that exports a greeter instead of `evhost:plugin/event-handler`.

wit_bindgen::generate!({
    inline: "
        package test:greeter;

        interface greeter {
            greet: func(name: string) -> string;
        }

        world greeter-world {
            export greeter;
        }
    ",
    world: "greeter-world",
});

struct Greeter;

impl exports::test::greeter::greeter::Guest for Greeter {
    fn greet(name: String) -> String {
        format!("hello, {name}")
    }
}

export!(Greeter);
