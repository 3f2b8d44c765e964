fn main() {
    println!("quest: nothing here yet");
}
